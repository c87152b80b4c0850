"""lab.solvers"""
