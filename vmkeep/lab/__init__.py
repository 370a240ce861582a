"""vmkeep.lab"""
