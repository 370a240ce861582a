"""vmkeep.tasks"""
