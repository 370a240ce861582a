"""vmkeep.deployments"""
