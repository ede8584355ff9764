_base_ = ['./mscan-s_8xb128_in1k.py']
