_base_ = ['./mscan-t_8xb128_in1k.py']
