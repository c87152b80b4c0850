"""lab.federated"""
