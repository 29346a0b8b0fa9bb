"""The layouts of the packed integer vectors the plan builder hands to the kernels, and the codes they hold.

One place names every position: the packers (:mod:`svdcompress.runtime.layers`, :mod:`svdcompress.runtime._single`
and the ``*_scratch_sizes`` functions of :mod:`.conv`) write by these names and the kernels read by them. numba
freezes a module-level int read by a kernel as a compile-time constant, so ``ip[IP_HP]`` compiles to the same
machine code as ``ip[7]``.

- Activation codes (``ACT_*``, :data:`ACT_CODES`): which activation a kernel applies; ``fp[FP_A0]``,
  ``fp[FP_A1]`` are its attributes (slope, alpha, min/max, beta/threshold).
- Pool spec (``POOL_*``, :data:`POOL_LEN` int64s): the pooling fused after a convolution or run on its own.
- Convolution parameters (``IP_*``, :data:`IP_LEN` int64s): the geometry of one Conv2d, then its pool spec at
  :data:`IP_POOL`.
- Scratch sizes of each convolution variant (``WIDE_*``, ``BLOCK_*``, ``IM2COL_*``, ``SHIFTED_*``).
- Linear chains: ``meta[layer]`` (``CHAIN_*``, :data:`CHAIN_LEN` int64s), ``fpar[layer]`` (``FP_*``).
- The fused single-example pass: ``cmeta[layer]`` (``NET_*``, :data:`NET_LEN` int64s).
"""

from __future__ import annotations

__all__ = [
    "ACT_CODES",
    "ACT_ELU",
    "ACT_GELU",
    "ACT_GELU_TANH",
    "ACT_HARDSWISH",
    "ACT_HARDTANH",
    "ACT_IDENTITY",
    "ACT_LEAKY_RELU",
    "ACT_MISH",
    "ACT_RELU",
    "ACT_RELU6",
    "ACT_SELU",
    "ACT_SIGMOID",
    "ACT_SILU",
    "ACT_SOFTPLUS",
    "ACT_TANH",
    "BLOCK_ACC",
    "BLOCK_INPUT",
    "BLOCK_LANES",
    "BLOCK_LEN",
    "BLOCK_OUT",
    "CHAIN_ACT",
    "CHAIN_BIAS_BASE",
    "CHAIN_COLS",
    "CHAIN_LEN",
    "CHAIN_PTR_BASE",
    "CHAIN_ROWS",
    "CONV_PARAMS",
    "FP_A0",
    "FP_A1",
    "FP_LEN",
    "IM2COL_ACC",
    "IM2COL_COLS",
    "IM2COL_DIL_H",
    "IM2COL_DIL_W",
    "IM2COL_IMAGE",
    "IM2COL_KH",
    "IM2COL_KW",
    "IM2COL_LEN",
    "IM2COL_PITCH",
    "IP_ACT",
    "IP_CIN",
    "IP_H",
    "IP_HP",
    "IP_LEN",
    "IP_OH",
    "IP_OW",
    "IP_PAD_H",
    "IP_PAD_W",
    "IP_PH",
    "IP_POOL",
    "IP_PW",
    "IP_STRIDE_H",
    "IP_STRIDE_W",
    "IP_W",
    "IP_WP",
    "MONOTONE_ACTS",
    "NET_BIAS_BASE",
    "NET_COUT",
    "NET_LEN",
    "NET_OUT_SIZE",
    "NET_PTR_BASE",
    "NET_PTR_LEN",
    "NET_SIZES_BASE",
    "NET_SIZES_LEN",
    "NET_TAP_BASE",
    "NET_TAP_LEN",
    "NET_USED_BASE",
    "NET_USED_LEN",
    "NET_VARIANT",
    "POOL_AVG",
    "POOL_COUNT_PAD",
    "POOL_DIL_H",
    "POOL_DIL_W",
    "POOL_DIVISOR",
    "POOL_KERNEL_H",
    "POOL_KERNEL_W",
    "POOL_KIND",
    "POOL_LEN",
    "POOL_MAX",
    "POOL_NONE",
    "POOL_PAD_H",
    "POOL_PAD_W",
    "POOL_STRIDE_H",
    "POOL_STRIDE_W",
    "SHIFTED_ACC",
    "SHIFTED_COPIES",
    "SHIFTED_DIL_W",
    "SHIFTED_IMAGE",
    "SHIFTED_KW",
    "SHIFTED_LEN",
    "WIDE_ACC",
    "WIDE_IMAGE",
    "WIDE_LEN",
    "WIDE_PLANE",
]

# ---------------------------------------------------------------------------------------------- activations

ACT_IDENTITY = 0
ACT_RELU = 1
ACT_RELU6 = 2
ACT_SIGMOID = 3
ACT_TANH = 4
ACT_SILU = 5
ACT_LEAKY_RELU = 6  # fp: negative slope
ACT_ELU = 7  # fp: alpha
ACT_GELU = 8
ACT_GELU_TANH = 9
ACT_HARDTANH = 10  # fp: min, max
ACT_MISH = 11
ACT_SELU = 12
ACT_HARDSWISH = 13
ACT_SOFTPLUS = 14  # fp: beta, threshold

ACT_CODES: dict[str, int] = {
    "identity": ACT_IDENTITY,
    "relu": ACT_RELU,
    "relu6": ACT_RELU6,
    "sigmoid": ACT_SIGMOID,
    "tanh": ACT_TANH,
    "silu": ACT_SILU,
    "leaky_relu": ACT_LEAKY_RELU,
    "elu": ACT_ELU,
    "gelu": ACT_GELU,
    "gelu_tanh": ACT_GELU_TANH,
    "hardtanh": ACT_HARDTANH,
    "mish": ACT_MISH,
    "selu": ACT_SELU,
    "hardswish": ACT_HARDSWISH,
    "softplus": ACT_SOFTPLUS,
}
MONOTONE_ACTS = frozenset({ACT_IDENTITY, ACT_RELU, ACT_RELU6, ACT_SIGMOID, ACT_TANH, ACT_HARDTANH})
"""Non-decreasing activations: max-pooling commutes with them, so a fused kernel may pool the raw sums first and
apply bias and activation to 4× fewer values."""

# Activation attributes: ``fp`` of a convolution, ``fpar[layer]`` of a chain (float32).
FP_A0, FP_A1 = 0, 1
FP_LEN = 2

# ---------------------------------------------------------------------------------------------- pool spec

POOL_NONE, POOL_MAX, POOL_AVG = 0, 1, 2
"""Pool kinds (``pool[POOL_KIND]``)."""

POOL_KIND = 0
POOL_KERNEL_H, POOL_KERNEL_W = 1, 2
POOL_STRIDE_H, POOL_STRIDE_W = 3, 4
POOL_PAD_H, POOL_PAD_W = 5, 6
POOL_DIL_H, POOL_DIL_W = 7, 8
POOL_COUNT_PAD = 9  # average pooling: count_include_pad (0 or 1)
POOL_DIVISOR = 10  # average pooling: divisor_override, 0 for none
POOL_LEN = 11

# ---------------------------------------------------------------------------------------------- convolution

IP_CIN = 0  # input channels
IP_H, IP_W = 1, 2  # input plane
IP_PAD_H, IP_PAD_W = 3, 4  # zero padding above and left of the input
IP_STRIDE_H, IP_STRIDE_W = 5, 6
IP_HP, IP_WP = 7, 8  # padded input plane
IP_OH, IP_OW = 9, 10  # convolution output plane
IP_ACT = 11  # activation code (ACT_*)
IP_PH, IP_PW = 12, 13  # plane written: the pooled output (IP_OH, IP_OW without a pool)
IP_POOL = 14  # the pool spec: ip[IP_POOL : IP_POOL + POOL_LEN] (kind POOL_NONE without a pool)
IP_LEN = IP_POOL + POOL_LEN

CONV_PARAMS = ("cin", "h", "w", "pad_h", "pad_w", "stride_h", "stride_w", "hp", "wp", "oh", "ow", "act", "ph", "pw")
"""Names of ``ip[0:IP_POOL]``, in order."""

# Scratch sizes (int64 vectors) of the convolution variants, from the ``*_scratch_sizes`` functions of .conv:
# elements of each buffer one worker needs, then the variant's extra parameters.
WIDE_ACC, WIDE_PLANE, WIDE_IMAGE = 0, 1, 2  # conv2d: wide accumulator, activation plane, padded image
WIDE_LEN = 3
BLOCK_INPUT, BLOCK_ACC, BLOCK_OUT, BLOCK_LANES = 0, 1, 2, 3  # conv2d_blocked: buffers, then images per block
BLOCK_LEN = 4
IM2COL_IMAGE, IM2COL_COLS, IM2COL_ACC, IM2COL_PITCH = 0, 1, 2, 3  # conv2d_im2col: buffers, column row pitch
IM2COL_KH, IM2COL_KW, IM2COL_DIL_H, IM2COL_DIL_W = 4, 5, 6, 7  # ... and the kernel's geometry
IM2COL_LEN = 8
SHIFTED_IMAGE, SHIFTED_COPIES, SHIFTED_ACC = 0, 1, 2  # conv2d_shifted: buffers (image: 0 without padding)
SHIFTED_KW, SHIFTED_DIL_W = 3, 4  # ... kernel width and column dilation
SHIFTED_LEN = 5

# ---------------------------------------------------------------------------------------------- linear chains

CHAIN_ROWS, CHAIN_COLS = 0, 1  # the layer's weight shape
CHAIN_PTR_BASE = 2  # where the layer's row pointers start in the concatenated ``ptr``
CHAIN_BIAS_BASE = 3  # where its biases start in the concatenated ``bias``
CHAIN_ACT = 4  # activation code (ACT_*)
CHAIN_LEN = 5

# ---------------------------------------------------------------------------------------------- fused pass

NET_VARIANT = 0  # per-image kernel (kernels.net.CONV_WIDE, CONV_SHIFTED, CONV_IM2COL)
NET_PTR_BASE, NET_PTR_LEN = 1, 2  # the layer's slice of the concatenated row pointers
NET_TAP_BASE, NET_TAP_LEN = 3, 4  # ... of the tap offsets and values (its nonzeros)
NET_USED_BASE, NET_USED_LEN = 5, 6  # ... of the used weight columns (im2col)
NET_BIAS_BASE, NET_COUT = 7, 8  # ... of the biases (one per output channel)
NET_SIZES_BASE, NET_SIZES_LEN = 9, 10  # ... of the scratch sizes
NET_OUT_SIZE = 11  # floats the layer writes per image
NET_LEN = 12
