"""vmkeep.vsphere"""
