"""lab.moe"""
