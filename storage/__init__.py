"""vmkeep.storage"""
