"""vmkeep.licensing"""
