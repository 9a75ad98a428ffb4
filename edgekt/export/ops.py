"""Layer primitives whose forward AND backward passes convert to TFLite builtin ops only.

TensorFlow's default gradients of several ops have no TFLite builtin kernel (they would need
the Flex delegate, which board runtimes lack): Conv2DBackpropFilter, DepthwiseConv2dNative
backprops, FusedBatchNormV3 (training) and its grad, ReluGrad, MaxPoolGrad. Each function
here computes the same values with `tf.custom_gradient` gradients built from CONV_2D,
TRANSPOSE_CONV, DEPTHWISE_CONV_2D, MUL, SUM/MEAN, RESHAPE, TRANSPOSE, PAD and friends.

All shapes are static (a fixed batch size), which also keeps BroadcastGradientArgs out.
"""

from __future__ import annotations

import tensorflow as tf


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int, int]:
    """(output size, pad before, pad after) of TensorFlow's SAME padding."""
    out = -(-size // stride)
    effective = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + effective - size, 0)
    return out, total // 2, total - total // 2


def _pad_input(x: tf.Tensor, kernel: tuple[int, int], stride: int, padding: str):
    """Pads x as the conv does and crops it to exactly the rows/cols the conv reads.
    Returns (padded x, (out_h, out_w), pads)."""
    _, h, w, _ = x.shape
    if padding == "SAME":
        oh, pt, pb = _same_pads(h, kernel[0], stride)
        ow, pl, pr = _same_pads(w, kernel[1], stride)
    else:
        oh, ow = (h - kernel[0]) // stride + 1, (w - kernel[1]) // stride + 1
        pt = pb = pl = pr = 0
    xp = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]]) if (pt or pb or pl or pr) else x
    need_h, need_w = (oh - 1) * stride + kernel[0], (ow - 1) * stride + kernel[1]
    if xp.shape[1] != need_h or xp.shape[2] != need_w:
        xp = xp[:, :need_h, :need_w, :]
    return xp, (oh, ow), (pt, pb, pl, pr)


def conv2d_filter_grad(x: tf.Tensor, dy: tf.Tensor, kernel: tuple[int, int], stride: int, padding: str) -> tf.Tensor:
    """dL/dW of a conv as ONE conv2d: the batch becomes the channel axis.

    dW[i, j, c, o] = sum_{b,y,x} Xpad[b, y*s+i, x*s+j, c] * dY[b, y, x, o] is a VALID conv of
    Xpad^T ([C, H, W, B]) with dY^T ([Ho, Wo, B, O]) dilated by the stride.
    """
    xp, _, _ = _pad_input(x, kernel, stride, padding)
    xt = tf.transpose(xp, [3, 1, 2, 0])
    dyt = tf.transpose(dy, [1, 2, 0, 3])
    if kernel == (1, 1) and stride == 1:
        # A 1x1 filter gradient is a plain matmul.
        b, h, w, c = xp.shape
        return tf.reshape(tf.matmul(tf.reshape(xp, [-1, c]), tf.reshape(dy, [-1, dy.shape[-1]]), transpose_a=True),
                          [1, 1, c, dy.shape[-1]])
    dw = tf.nn.conv2d(xt, dyt, strides=1, padding="VALID", dilations=stride)  # [C, kh, kw, O]
    return tf.transpose(dw, [1, 2, 0, 3])


def conv2d(x: tf.Tensor, w: tf.Tensor, stride: int = 1, padding: str = "SAME", filter_grad: bool = True) -> tf.Tensor:
    """tf.nn.conv2d with builtin-only gradients (TRANSPOSE_CONV for dX, CONV_2D for dW).

    Args:
      x: [B, H, W, C] input with a static shape.
      w: [kh, kw, C, O] kernel.
      stride: the same stride on both axes.
      padding: "SAME" or "VALID".
      filter_grad: compute dW (False for frozen layers saves the work).
    """
    kernel = (int(w.shape[0]), int(w.shape[1]))

    @tf.custom_gradient
    def _conv(x, w):
        y = tf.nn.conv2d(x, w, strides=stride, padding=padding)

        def grad(dy):
            dx = tf.nn.conv2d_transpose(dy, w, output_shape=x.shape, strides=stride, padding=padding)
            dw = conv2d_filter_grad(x, dy, kernel, stride, padding) if filter_grad else tf.zeros_like(w)
            return dx, dw

        return y, grad

    return _conv(x, w)


def _dilate(dy: tf.Tensor, stride: int) -> tf.Tensor:
    """Inserts stride-1 zeros between rows and columns: [B, H, W, C] -> [B, (H-1)*s+1, (W-1)*s+1, C]."""
    if stride == 1:
        return dy
    b, h, w, c = dy.shape
    z = tf.zeros_like(dy)
    rows = tf.reshape(tf.stack([dy] + [z] * (stride - 1), axis=2), [b, h * stride, w, c])[:, : (h - 1) * stride + 1]
    z = tf.zeros_like(rows)
    cols = tf.reshape(tf.stack([rows] + [z] * (stride - 1), axis=3), [b, rows.shape[1], w * stride, c])
    return cols[:, :, : (w - 1) * stride + 1]


def depthwise_conv2d(x: tf.Tensor, w: tf.Tensor, stride: int = 1, padding: str = "SAME",
                     filter_grad: bool = True) -> tf.Tensor:
    """tf.nn.depthwise_conv2d (depth multiplier 1) with builtin-only gradients.

    dX is a depthwise conv of the stride-dilated, padded dY with the flipped kernel; dW is a
    sum over batch and positions of shifted input times dY, one offset at a time.
    """
    kh, kw = int(w.shape[0]), int(w.shape[1])
    if int(w.shape[3]) != 1:
        raise ValueError(f"depthwise_conv2d supports depth multiplier 1. Received kernel shape {w.shape}")

    @tf.custom_gradient
    def _dw(x, w):
        y = tf.nn.depthwise_conv2d(x, w, strides=[1, stride, stride, 1], padding=padding)

        def grad(dy):
            xp, (oh, ow), (pt, pb, pl, pr) = _pad_input(x, (kh, kw), stride, padding)
            d = _dilate(dy, stride)
            d = tf.pad(d, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]])
            dxp = tf.nn.depthwise_conv2d(d, tf.reverse(w, axis=[0, 1]), strides=[1, 1, 1, 1], padding="VALID")
            # dxp covers the cropped padded input; place it back and drop the padding.
            h, wd = x.shape[1], x.shape[2]
            full_h, full_w = h + pt + pb, wd + pl + pr
            dxp = tf.pad(dxp, [[0, 0], [0, full_h - dxp.shape[1]], [0, full_w - dxp.shape[2]], [0, 0]])
            dx = dxp[:, pt:pt + h, pl:pl + wd, :]
            if filter_grad:
                taps = []
                for i in range(kh):
                    for j in range(kw):
                        patch = xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride, :]
                        taps.append(tf.reduce_sum(patch * dy, axis=[0, 1, 2]))
                dw = tf.reshape(tf.stack(taps), [kh, kw, -1, 1])
            else:
                dw = tf.zeros_like(w)
            return dx, dw

        return y, grad

    return _dw(x, w)


def relu(x: tf.Tensor, max_value: float | None = None) -> tf.Tensor:
    """ReLU (or ReLU6 with max_value) whose gradient is a multiply by a 0/1 mask."""

    @tf.custom_gradient
    def _relu(x):
        if max_value is None:
            y = tf.maximum(x, 0.0)
            mask = tf.cast(x > 0.0, x.dtype)
        else:
            y = tf.minimum(tf.maximum(x, 0.0), max_value)
            mask = tf.cast(tf.logical_and(x > 0.0, x < max_value), x.dtype)

        def grad(dy):
            return dy * mask

        return y, grad

    return _relu(x)


def max_pool(x: tf.Tensor, pool: int, stride: int) -> tf.Tensor:
    """Non-overlapping max pooling (pool == stride, VALID) with a mask-based gradient.

    The gradient goes to every position equal to its window's maximum (ties share it), made
    of RESHAPE, EQUAL, CAST, MUL and TILE.
    """
    if pool != stride:
        raise ValueError(f"on-device max pooling needs pool_size == strides. Received pool={pool}, stride={stride}")
    b, h, w, c = x.shape
    oh, ow = h // pool, w // pool

    @tf.custom_gradient
    def _pool(x):
        xc = x[:, : oh * pool, : ow * pool, :]
        windows = tf.reshape(xc, [b, oh, pool, ow, pool, c])
        y = tf.reduce_max(windows, axis=[2, 4])

        def grad(dy):
            mask = tf.cast(tf.equal(windows, tf.reshape(y, [b, oh, 1, ow, 1, c])), x.dtype)
            g = mask * tf.reshape(dy, [b, oh, 1, ow, 1, c])
            g = tf.reshape(g, [b, oh * pool, ow * pool, c])
            if oh * pool != h or ow * pool != w:
                g = tf.pad(g, [[0, 0], [0, h - oh * pool], [0, w - ow * pool], [0, 0]])
            return g

        return y, grad

    return _pool(x)


def avg_pool(x: tf.Tensor, pool: int, stride: int) -> tf.Tensor:
    """Non-overlapping average pooling as reshape + mean (its gradient is builtin)."""
    if pool != stride:
        raise ValueError(f"on-device average pooling needs pool_size == strides. Received pool={pool}, stride={stride}")
    b, h, w, c = x.shape
    oh, ow = h // pool, w // pool
    windows = tf.reshape(x[:, : oh * pool, : ow * pool, :], [b, oh, pool, ow, pool, c])
    return tf.reduce_mean(windows, axis=[2, 4])


def batch_norm_train(x: tf.Tensor, gamma, beta, mask: tf.Tensor, epsilon: float) -> tuple[tf.Tensor, tf.Tensor,
                                                                                         tf.Tensor]:
    """Batch normalisation with batch statistics from reduce ops, over the examples whose
    `mask` is 1 (padding examples of a short last batch do not count).

    The backward pass is the closed form (one fused custom gradient instead of autodiff
    through every reduction, which would add TILE/broadcast ops):
      dx = rstd * (g - m * sum(g m) / n - m * xhat * sum(g xhat m) / n),  g = dy * gamma.

    Returns (normalised x, batch mean, batch variance); mean and variance carry no gradient.
    """
    axes = list(range(x.shape.rank - 1))
    m = tf.reshape(mask, [-1] + [1] * (x.shape.rank - 1))
    positions = 1
    for d in x.shape[1:-1]:
        positions *= int(d)
    count = tf.maximum(tf.reduce_sum(mask) * positions, 1.0)
    channels = x.shape[-1]
    ones = tf.ones([channels], x.dtype)
    g_in = gamma if gamma is not None else ones
    b_in = beta if beta is not None else tf.zeros([channels], x.dtype)

    @tf.custom_gradient
    def _bn(x, g_param, b_param):
        mean = tf.reduce_sum(x * m, axis=axes) / count
        centered = x - mean
        var = tf.reduce_sum(tf.square(centered) * m, axis=axes) / count
        rstd = tf.math.rsqrt(var + epsilon)
        xhat = centered * rstd
        y = xhat * g_param + b_param

        def grad(dy, *unused):  # mean and variance outputs carry no gradient
            d_beta = tf.reduce_sum(dy, axis=axes)
            d_gamma = tf.reduce_sum(dy * xhat, axis=axes)
            g = dy * g_param
            gm = g * m
            mean_g = tf.reduce_sum(gm, axis=axes) / count
            mean_gx = tf.reduce_sum(gm * xhat, axis=axes) / count
            dx = rstd * (g - m * (mean_g + xhat * mean_gx))
            return dx, d_gamma, d_beta

        return (y, tf.stop_gradient(mean), tf.stop_gradient(var)), grad

    return _bn(x, g_in, b_in)
