"""The limits every path of the noise shares (numpy, numba, torch, Triton, the runtime), defined here once.

Seeds and counters are loaded as int64 by the Triton kernel, so both stay below 2**63; logvar is clamped to [-30, 20]
before the exp (std in [3e-7, 2.2e4], no overflow in fp16/bf16 outputs).
"""
STREAM_LIMIT = 2**63
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
