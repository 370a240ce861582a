"""vmkeep.flows"""
