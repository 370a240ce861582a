"""vmkeep.cli"""
