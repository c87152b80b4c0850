"""lab.continual"""
