_base_ = ['./segnext_mscan-b_1xb16-adamw-80k_coco-stuff164k-512x512.py']
