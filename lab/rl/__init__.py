"""lab.rl"""
