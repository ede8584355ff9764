_base_ = ['./mscan-l_8xb128_in1k.py']
