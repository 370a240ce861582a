"""vmkeep.disks"""
