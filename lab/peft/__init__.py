"""lab.peft"""
