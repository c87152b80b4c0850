"""lab.flow"""
