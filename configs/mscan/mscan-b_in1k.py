_base_ = ['./mscan-b_8xb128_in1k.py']
