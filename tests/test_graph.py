"""Layer graphs traced from the models: the hand-written wiring they replace, every Keras port,
the digits CNN and ONNX graphs (run the graph, get the model's output)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paper_repro.feedforward import digits, models
from paper_repro.feedforward import graph as G

# The wiring the hand-written topology functions of the data-free repairs produced before
# the graph replaced them (MobileNet v1 alpha 0.25 and MobileNetV2 alpha 0.35; the v2 stride-2
# padding depends on the parity of the input size, hence 224 and 96): (layer, kernel variable,
# kind, batch norm after it, activation, layer(s) feeding it, pooling between, stride,
# padding, input size).
HAND = {
    'mobilenet_224': [
        ('conv1', 'kernel', 'conv', 'conv1_bn', 'relu6', None, None, 2, 'SAME', (224, 224)),
        ('conv_dw_1', 'depthwise_kernel', 'depthwise', 'conv_dw_1_bn', 'relu6', 'conv1', None, 1, 'SAME', (112, 112)),
        ('conv_pw_1', 'kernel', 'conv', 'conv_pw_1_bn', 'relu6', 'conv_dw_1', None, 1, 'SAME', (112, 112)),
        ('conv_dw_2', 'depthwise_kernel', 'depthwise', 'conv_dw_2_bn', 'relu6', 'conv_pw_1', None, 2, ((0, 1), (0, 1)), (112, 112)),
        ('conv_pw_2', 'kernel', 'conv', 'conv_pw_2_bn', 'relu6', 'conv_dw_2', None, 1, 'SAME', (56, 56)),
        ('conv_dw_3', 'depthwise_kernel', 'depthwise', 'conv_dw_3_bn', 'relu6', 'conv_pw_2', None, 1, 'SAME', (56, 56)),
        ('conv_pw_3', 'kernel', 'conv', 'conv_pw_3_bn', 'relu6', 'conv_dw_3', None, 1, 'SAME', (56, 56)),
        ('conv_dw_4', 'depthwise_kernel', 'depthwise', 'conv_dw_4_bn', 'relu6', 'conv_pw_3', None, 2, ((0, 1), (0, 1)), (56, 56)),
        ('conv_pw_4', 'kernel', 'conv', 'conv_pw_4_bn', 'relu6', 'conv_dw_4', None, 1, 'SAME', (28, 28)),
        ('conv_dw_5', 'depthwise_kernel', 'depthwise', 'conv_dw_5_bn', 'relu6', 'conv_pw_4', None, 1, 'SAME', (28, 28)),
        ('conv_pw_5', 'kernel', 'conv', 'conv_pw_5_bn', 'relu6', 'conv_dw_5', None, 1, 'SAME', (28, 28)),
        ('conv_dw_6', 'depthwise_kernel', 'depthwise', 'conv_dw_6_bn', 'relu6', 'conv_pw_5', None, 2, ((0, 1), (0, 1)), (28, 28)),
        ('conv_pw_6', 'kernel', 'conv', 'conv_pw_6_bn', 'relu6', 'conv_dw_6', None, 1, 'SAME', (14, 14)),
        ('conv_dw_7', 'depthwise_kernel', 'depthwise', 'conv_dw_7_bn', 'relu6', 'conv_pw_6', None, 1, 'SAME', (14, 14)),
        ('conv_pw_7', 'kernel', 'conv', 'conv_pw_7_bn', 'relu6', 'conv_dw_7', None, 1, 'SAME', (14, 14)),
        ('conv_dw_8', 'depthwise_kernel', 'depthwise', 'conv_dw_8_bn', 'relu6', 'conv_pw_7', None, 1, 'SAME', (14, 14)),
        ('conv_pw_8', 'kernel', 'conv', 'conv_pw_8_bn', 'relu6', 'conv_dw_8', None, 1, 'SAME', (14, 14)),
        ('conv_dw_9', 'depthwise_kernel', 'depthwise', 'conv_dw_9_bn', 'relu6', 'conv_pw_8', None, 1, 'SAME', (14, 14)),
        ('conv_pw_9', 'kernel', 'conv', 'conv_pw_9_bn', 'relu6', 'conv_dw_9', None, 1, 'SAME', (14, 14)),
        ('conv_dw_10', 'depthwise_kernel', 'depthwise', 'conv_dw_10_bn', 'relu6', 'conv_pw_9', None, 1, 'SAME', (14, 14)),
        ('conv_pw_10', 'kernel', 'conv', 'conv_pw_10_bn', 'relu6', 'conv_dw_10', None, 1, 'SAME', (14, 14)),
        ('conv_dw_11', 'depthwise_kernel', 'depthwise', 'conv_dw_11_bn', 'relu6', 'conv_pw_10', None, 1, 'SAME', (14, 14)),
        ('conv_pw_11', 'kernel', 'conv', 'conv_pw_11_bn', 'relu6', 'conv_dw_11', None, 1, 'SAME', (14, 14)),
        ('conv_dw_12', 'depthwise_kernel', 'depthwise', 'conv_dw_12_bn', 'relu6', 'conv_pw_11', None, 2, ((0, 1), (0, 1)), (14, 14)),
        ('conv_pw_12', 'kernel', 'conv', 'conv_pw_12_bn', 'relu6', 'conv_dw_12', None, 1, 'SAME', (7, 7)),
        ('conv_dw_13', 'depthwise_kernel', 'depthwise', 'conv_dw_13_bn', 'relu6', 'conv_pw_12', None, 1, 'SAME', (7, 7)),
        ('conv_pw_13', 'kernel', 'conv', 'conv_pw_13_bn', 'relu6', 'conv_dw_13', None, 1, 'SAME', (7, 7)),
        ('conv_preds', 'kernel', 'conv', None, 'linear', 'conv_pw_13', 'gap', 1, 'VALID', (1, 1)),
    ],
    'mobilenet_v2_224': [
        ('Conv1', 'kernel', 'conv', 'bn_Conv1', 'relu6', None, None, 2, 'SAME', (224, 224)),
        ('expanded_conv_depthwise', 'depthwise_kernel', 'depthwise', 'expanded_conv_depthwise_BN', 'relu6', 'Conv1', None, 1, 'SAME', (112, 112)),
        ('expanded_conv_project', 'kernel', 'conv', 'expanded_conv_project_BN', 'linear', 'expanded_conv_depthwise', None, 1, 'SAME', (112, 112)),
        ('block_1_expand', 'kernel', 'conv', 'block_1_expand_BN', 'relu6', 'expanded_conv_project', None, 1, 'SAME', (112, 112)),
        ('block_1_depthwise', 'depthwise_kernel', 'depthwise', 'block_1_depthwise_BN', 'relu6', 'block_1_expand', None, 2, ((0, 1), (0, 1)), (112, 112)),
        ('block_1_project', 'kernel', 'conv', 'block_1_project_BN', 'linear', 'block_1_depthwise', None, 1, 'SAME', (56, 56)),
        ('block_2_expand', 'kernel', 'conv', 'block_2_expand_BN', 'relu6', 'block_1_project', None, 1, 'SAME', (56, 56)),
        ('block_2_depthwise', 'depthwise_kernel', 'depthwise', 'block_2_depthwise_BN', 'relu6', 'block_2_expand', None, 1, 'SAME', (56, 56)),
        ('block_2_project', 'kernel', 'conv', 'block_2_project_BN', 'linear', 'block_2_depthwise', None, 1, 'SAME', (56, 56)),
        ('block_3_expand', 'kernel', 'conv', 'block_3_expand_BN', 'relu6', ('block_2_project', 'block_1_project'), None, 1, 'SAME', (56, 56)),
        ('block_3_depthwise', 'depthwise_kernel', 'depthwise', 'block_3_depthwise_BN', 'relu6', 'block_3_expand', None, 2, ((0, 1), (0, 1)), (56, 56)),
        ('block_3_project', 'kernel', 'conv', 'block_3_project_BN', 'linear', 'block_3_depthwise', None, 1, 'SAME', (28, 28)),
        ('block_4_expand', 'kernel', 'conv', 'block_4_expand_BN', 'relu6', 'block_3_project', None, 1, 'SAME', (28, 28)),
        ('block_4_depthwise', 'depthwise_kernel', 'depthwise', 'block_4_depthwise_BN', 'relu6', 'block_4_expand', None, 1, 'SAME', (28, 28)),
        ('block_4_project', 'kernel', 'conv', 'block_4_project_BN', 'linear', 'block_4_depthwise', None, 1, 'SAME', (28, 28)),
        ('block_5_expand', 'kernel', 'conv', 'block_5_expand_BN', 'relu6', ('block_4_project', 'block_3_project'), None, 1, 'SAME', (28, 28)),
        ('block_5_depthwise', 'depthwise_kernel', 'depthwise', 'block_5_depthwise_BN', 'relu6', 'block_5_expand', None, 1, 'SAME', (28, 28)),
        ('block_5_project', 'kernel', 'conv', 'block_5_project_BN', 'linear', 'block_5_depthwise', None, 1, 'SAME', (28, 28)),
        ('block_6_expand', 'kernel', 'conv', 'block_6_expand_BN', 'relu6', ('block_5_project', 'block_4_project', 'block_3_project'), None, 1, 'SAME', (28, 28)),
        ('block_6_depthwise', 'depthwise_kernel', 'depthwise', 'block_6_depthwise_BN', 'relu6', 'block_6_expand', None, 2, ((0, 1), (0, 1)), (28, 28)),
        ('block_6_project', 'kernel', 'conv', 'block_6_project_BN', 'linear', 'block_6_depthwise', None, 1, 'SAME', (14, 14)),
        ('block_7_expand', 'kernel', 'conv', 'block_7_expand_BN', 'relu6', 'block_6_project', None, 1, 'SAME', (14, 14)),
        ('block_7_depthwise', 'depthwise_kernel', 'depthwise', 'block_7_depthwise_BN', 'relu6', 'block_7_expand', None, 1, 'SAME', (14, 14)),
        ('block_7_project', 'kernel', 'conv', 'block_7_project_BN', 'linear', 'block_7_depthwise', None, 1, 'SAME', (14, 14)),
        ('block_8_expand', 'kernel', 'conv', 'block_8_expand_BN', 'relu6', ('block_7_project', 'block_6_project'), None, 1, 'SAME', (14, 14)),
        ('block_8_depthwise', 'depthwise_kernel', 'depthwise', 'block_8_depthwise_BN', 'relu6', 'block_8_expand', None, 1, 'SAME', (14, 14)),
        ('block_8_project', 'kernel', 'conv', 'block_8_project_BN', 'linear', 'block_8_depthwise', None, 1, 'SAME', (14, 14)),
        ('block_9_expand', 'kernel', 'conv', 'block_9_expand_BN', 'relu6', ('block_8_project', 'block_7_project', 'block_6_project'), None, 1, 'SAME', (14, 14)),
        ('block_9_depthwise', 'depthwise_kernel', 'depthwise', 'block_9_depthwise_BN', 'relu6', 'block_9_expand', None, 1, 'SAME', (14, 14)),
        ('block_9_project', 'kernel', 'conv', 'block_9_project_BN', 'linear', 'block_9_depthwise', None, 1, 'SAME', (14, 14)),
        ('block_10_expand', 'kernel', 'conv', 'block_10_expand_BN', 'relu6', ('block_9_project', 'block_8_project', 'block_7_project', 'block_6_project'), None, 1, 'SAME', (14, 14)),
        ('block_10_depthwise', 'depthwise_kernel', 'depthwise', 'block_10_depthwise_BN', 'relu6', 'block_10_expand', None, 1, 'SAME', (14, 14)),
        ('block_10_project', 'kernel', 'conv', 'block_10_project_BN', 'linear', 'block_10_depthwise', None, 1, 'SAME', (14, 14)),
        ('block_11_expand', 'kernel', 'conv', 'block_11_expand_BN', 'relu6', 'block_10_project', None, 1, 'SAME', (14, 14)),
        ('block_11_depthwise', 'depthwise_kernel', 'depthwise', 'block_11_depthwise_BN', 'relu6', 'block_11_expand', None, 1, 'SAME', (14, 14)),
        ('block_11_project', 'kernel', 'conv', 'block_11_project_BN', 'linear', 'block_11_depthwise', None, 1, 'SAME', (14, 14)),
        ('block_12_expand', 'kernel', 'conv', 'block_12_expand_BN', 'relu6', ('block_11_project', 'block_10_project'), None, 1, 'SAME', (14, 14)),
        ('block_12_depthwise', 'depthwise_kernel', 'depthwise', 'block_12_depthwise_BN', 'relu6', 'block_12_expand', None, 1, 'SAME', (14, 14)),
        ('block_12_project', 'kernel', 'conv', 'block_12_project_BN', 'linear', 'block_12_depthwise', None, 1, 'SAME', (14, 14)),
        ('block_13_expand', 'kernel', 'conv', 'block_13_expand_BN', 'relu6', ('block_12_project', 'block_11_project', 'block_10_project'), None, 1, 'SAME', (14, 14)),
        ('block_13_depthwise', 'depthwise_kernel', 'depthwise', 'block_13_depthwise_BN', 'relu6', 'block_13_expand', None, 2, ((0, 1), (0, 1)), (14, 14)),
        ('block_13_project', 'kernel', 'conv', 'block_13_project_BN', 'linear', 'block_13_depthwise', None, 1, 'SAME', (7, 7)),
        ('block_14_expand', 'kernel', 'conv', 'block_14_expand_BN', 'relu6', 'block_13_project', None, 1, 'SAME', (7, 7)),
        ('block_14_depthwise', 'depthwise_kernel', 'depthwise', 'block_14_depthwise_BN', 'relu6', 'block_14_expand', None, 1, 'SAME', (7, 7)),
        ('block_14_project', 'kernel', 'conv', 'block_14_project_BN', 'linear', 'block_14_depthwise', None, 1, 'SAME', (7, 7)),
        ('block_15_expand', 'kernel', 'conv', 'block_15_expand_BN', 'relu6', ('block_14_project', 'block_13_project'), None, 1, 'SAME', (7, 7)),
        ('block_15_depthwise', 'depthwise_kernel', 'depthwise', 'block_15_depthwise_BN', 'relu6', 'block_15_expand', None, 1, 'SAME', (7, 7)),
        ('block_15_project', 'kernel', 'conv', 'block_15_project_BN', 'linear', 'block_15_depthwise', None, 1, 'SAME', (7, 7)),
        ('block_16_expand', 'kernel', 'conv', 'block_16_expand_BN', 'relu6', ('block_15_project', 'block_14_project', 'block_13_project'), None, 1, 'SAME', (7, 7)),
        ('block_16_depthwise', 'depthwise_kernel', 'depthwise', 'block_16_depthwise_BN', 'relu6', 'block_16_expand', None, 1, 'SAME', (7, 7)),
        ('block_16_project', 'kernel', 'conv', 'block_16_project_BN', 'linear', 'block_16_depthwise', None, 1, 'SAME', (7, 7)),
        ('Conv_1', 'kernel', 'conv', 'Conv_1_bn', 'relu6', 'block_16_project', None, 1, 'SAME', (7, 7)),
        ('predictions', 'kernel', 'dense', None, 'linear', 'Conv_1', 'gap', 1, 'VALID', None),
    ],
    'mobilenet_v2_96': [
        ('Conv1', 'kernel', 'conv', 'bn_Conv1', 'relu6', None, None, 2, 'SAME', (96, 96)),
        ('expanded_conv_depthwise', 'depthwise_kernel', 'depthwise', 'expanded_conv_depthwise_BN', 'relu6', 'Conv1', None, 1, 'SAME', (48, 48)),
        ('expanded_conv_project', 'kernel', 'conv', 'expanded_conv_project_BN', 'linear', 'expanded_conv_depthwise', None, 1, 'SAME', (48, 48)),
        ('block_1_expand', 'kernel', 'conv', 'block_1_expand_BN', 'relu6', 'expanded_conv_project', None, 1, 'SAME', (48, 48)),
        ('block_1_depthwise', 'depthwise_kernel', 'depthwise', 'block_1_depthwise_BN', 'relu6', 'block_1_expand', None, 2, ((0, 1), (0, 1)), (48, 48)),
        ('block_1_project', 'kernel', 'conv', 'block_1_project_BN', 'linear', 'block_1_depthwise', None, 1, 'SAME', (24, 24)),
        ('block_2_expand', 'kernel', 'conv', 'block_2_expand_BN', 'relu6', 'block_1_project', None, 1, 'SAME', (24, 24)),
        ('block_2_depthwise', 'depthwise_kernel', 'depthwise', 'block_2_depthwise_BN', 'relu6', 'block_2_expand', None, 1, 'SAME', (24, 24)),
        ('block_2_project', 'kernel', 'conv', 'block_2_project_BN', 'linear', 'block_2_depthwise', None, 1, 'SAME', (24, 24)),
        ('block_3_expand', 'kernel', 'conv', 'block_3_expand_BN', 'relu6', ('block_2_project', 'block_1_project'), None, 1, 'SAME', (24, 24)),
        ('block_3_depthwise', 'depthwise_kernel', 'depthwise', 'block_3_depthwise_BN', 'relu6', 'block_3_expand', None, 2, ((0, 1), (0, 1)), (24, 24)),
        ('block_3_project', 'kernel', 'conv', 'block_3_project_BN', 'linear', 'block_3_depthwise', None, 1, 'SAME', (12, 12)),
        ('block_4_expand', 'kernel', 'conv', 'block_4_expand_BN', 'relu6', 'block_3_project', None, 1, 'SAME', (12, 12)),
        ('block_4_depthwise', 'depthwise_kernel', 'depthwise', 'block_4_depthwise_BN', 'relu6', 'block_4_expand', None, 1, 'SAME', (12, 12)),
        ('block_4_project', 'kernel', 'conv', 'block_4_project_BN', 'linear', 'block_4_depthwise', None, 1, 'SAME', (12, 12)),
        ('block_5_expand', 'kernel', 'conv', 'block_5_expand_BN', 'relu6', ('block_4_project', 'block_3_project'), None, 1, 'SAME', (12, 12)),
        ('block_5_depthwise', 'depthwise_kernel', 'depthwise', 'block_5_depthwise_BN', 'relu6', 'block_5_expand', None, 1, 'SAME', (12, 12)),
        ('block_5_project', 'kernel', 'conv', 'block_5_project_BN', 'linear', 'block_5_depthwise', None, 1, 'SAME', (12, 12)),
        ('block_6_expand', 'kernel', 'conv', 'block_6_expand_BN', 'relu6', ('block_5_project', 'block_4_project', 'block_3_project'), None, 1, 'SAME', (12, 12)),
        ('block_6_depthwise', 'depthwise_kernel', 'depthwise', 'block_6_depthwise_BN', 'relu6', 'block_6_expand', None, 2, ((0, 1), (0, 1)), (12, 12)),
        ('block_6_project', 'kernel', 'conv', 'block_6_project_BN', 'linear', 'block_6_depthwise', None, 1, 'SAME', (6, 6)),
        ('block_7_expand', 'kernel', 'conv', 'block_7_expand_BN', 'relu6', 'block_6_project', None, 1, 'SAME', (6, 6)),
        ('block_7_depthwise', 'depthwise_kernel', 'depthwise', 'block_7_depthwise_BN', 'relu6', 'block_7_expand', None, 1, 'SAME', (6, 6)),
        ('block_7_project', 'kernel', 'conv', 'block_7_project_BN', 'linear', 'block_7_depthwise', None, 1, 'SAME', (6, 6)),
        ('block_8_expand', 'kernel', 'conv', 'block_8_expand_BN', 'relu6', ('block_7_project', 'block_6_project'), None, 1, 'SAME', (6, 6)),
        ('block_8_depthwise', 'depthwise_kernel', 'depthwise', 'block_8_depthwise_BN', 'relu6', 'block_8_expand', None, 1, 'SAME', (6, 6)),
        ('block_8_project', 'kernel', 'conv', 'block_8_project_BN', 'linear', 'block_8_depthwise', None, 1, 'SAME', (6, 6)),
        ('block_9_expand', 'kernel', 'conv', 'block_9_expand_BN', 'relu6', ('block_8_project', 'block_7_project', 'block_6_project'), None, 1, 'SAME', (6, 6)),
        ('block_9_depthwise', 'depthwise_kernel', 'depthwise', 'block_9_depthwise_BN', 'relu6', 'block_9_expand', None, 1, 'SAME', (6, 6)),
        ('block_9_project', 'kernel', 'conv', 'block_9_project_BN', 'linear', 'block_9_depthwise', None, 1, 'SAME', (6, 6)),
        ('block_10_expand', 'kernel', 'conv', 'block_10_expand_BN', 'relu6', ('block_9_project', 'block_8_project', 'block_7_project', 'block_6_project'), None, 1, 'SAME', (6, 6)),
        ('block_10_depthwise', 'depthwise_kernel', 'depthwise', 'block_10_depthwise_BN', 'relu6', 'block_10_expand', None, 1, 'SAME', (6, 6)),
        ('block_10_project', 'kernel', 'conv', 'block_10_project_BN', 'linear', 'block_10_depthwise', None, 1, 'SAME', (6, 6)),
        ('block_11_expand', 'kernel', 'conv', 'block_11_expand_BN', 'relu6', 'block_10_project', None, 1, 'SAME', (6, 6)),
        ('block_11_depthwise', 'depthwise_kernel', 'depthwise', 'block_11_depthwise_BN', 'relu6', 'block_11_expand', None, 1, 'SAME', (6, 6)),
        ('block_11_project', 'kernel', 'conv', 'block_11_project_BN', 'linear', 'block_11_depthwise', None, 1, 'SAME', (6, 6)),
        ('block_12_expand', 'kernel', 'conv', 'block_12_expand_BN', 'relu6', ('block_11_project', 'block_10_project'), None, 1, 'SAME', (6, 6)),
        ('block_12_depthwise', 'depthwise_kernel', 'depthwise', 'block_12_depthwise_BN', 'relu6', 'block_12_expand', None, 1, 'SAME', (6, 6)),
        ('block_12_project', 'kernel', 'conv', 'block_12_project_BN', 'linear', 'block_12_depthwise', None, 1, 'SAME', (6, 6)),
        ('block_13_expand', 'kernel', 'conv', 'block_13_expand_BN', 'relu6', ('block_12_project', 'block_11_project', 'block_10_project'), None, 1, 'SAME', (6, 6)),
        ('block_13_depthwise', 'depthwise_kernel', 'depthwise', 'block_13_depthwise_BN', 'relu6', 'block_13_expand', None, 2, ((0, 1), (0, 1)), (6, 6)),
        ('block_13_project', 'kernel', 'conv', 'block_13_project_BN', 'linear', 'block_13_depthwise', None, 1, 'SAME', (3, 3)),
        ('block_14_expand', 'kernel', 'conv', 'block_14_expand_BN', 'relu6', 'block_13_project', None, 1, 'SAME', (3, 3)),
        ('block_14_depthwise', 'depthwise_kernel', 'depthwise', 'block_14_depthwise_BN', 'relu6', 'block_14_expand', None, 1, 'SAME', (3, 3)),
        ('block_14_project', 'kernel', 'conv', 'block_14_project_BN', 'linear', 'block_14_depthwise', None, 1, 'SAME', (3, 3)),
        ('block_15_expand', 'kernel', 'conv', 'block_15_expand_BN', 'relu6', ('block_14_project', 'block_13_project'), None, 1, 'SAME', (3, 3)),
        ('block_15_depthwise', 'depthwise_kernel', 'depthwise', 'block_15_depthwise_BN', 'relu6', 'block_15_expand', None, 1, 'SAME', (3, 3)),
        ('block_15_project', 'kernel', 'conv', 'block_15_project_BN', 'linear', 'block_15_depthwise', None, 1, 'SAME', (3, 3)),
        ('block_16_expand', 'kernel', 'conv', 'block_16_expand_BN', 'relu6', ('block_15_project', 'block_14_project', 'block_13_project'), None, 1, 'SAME', (3, 3)),
        ('block_16_depthwise', 'depthwise_kernel', 'depthwise', 'block_16_depthwise_BN', 'relu6', 'block_16_expand', None, 1, 'SAME', (3, 3)),
        ('block_16_project', 'kernel', 'conv', 'block_16_project_BN', 'linear', 'block_16_depthwise', None, 1, 'SAME', (3, 3)),
        ('Conv_1', 'kernel', 'conv', 'Conv_1_bn', 'relu6', 'block_16_project', None, 1, 'SAME', (3, 3)),
        ('predictions', 'kernel', 'dense', None, 'linear', 'Conv_1', 'gap', 1, 'VALID', None),
    ],
}
HAND_DIGITS = [
    ("conv1", "kernel", "conv", None, "relu", None, None, 1, "SAME", (8, 8)),
    ("conv2", "kernel", "conv", None, "relu", "conv1", None, 1, "SAME", (8, 8)),
    ("fc1", "kernel", "dense", None, "relu", "conv2", "max2_flatten", 1, "VALID", None),
    ("dense", "kernel", "dense", None, "linear", "fc1", None, 1, "VALID", None),
]


def _same_pads(n, k, s):
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return (total // 2, total - total // 2)


def _assert_matches_hand(graph, params, hand):
    rows = {r["name"]: r for r in G.layer_table(graph)}
    assert [r["name"] for r in G.layer_table(graph)] == [h[0] for h in hand]
    for name, var, kind, bn, act, prev, pool, stride, padding, hw in hand:
        r = rows[name]
        assert r["kernels"] == (f"{name}/{var}",), name
        assert r["op"] == kind, name
        assert r["bn"] == bn, name
        assert r["act"] == act, name
        want_prev = () if prev is None else (prev,) if isinstance(prev, str) else prev
        assert set(r["prev"]) == set(want_prev), name
        if pool == "gap":
            assert "sum" in r["between"], name
        elif pool == "max2_flatten":
            assert r["between"][:2] == ("maxpool", "reshape"), name
        else:
            assert not {"sum", "maxpool", "sumpool"} & set(r["between"]), name
        if kind == "dense":
            assert r["in_hw"] is None and r["strides"] == (), name
            continue
        assert r["in_hw"] == hw, name
        assert r["strides"] == (stride, stride), name
        k = np.shape(params[name][var])[0]
        if padding == "SAME":
            want = (_same_pads(hw[0], k, stride), _same_pads(hw[1], k, stride))
        elif padding == "VALID":
            want = ((0, 0), (0, 0))
        else:
            want = tuple(tuple(p) for p in padding)
        assert r["padding"] == want, name


@pytest.mark.parametrize("key", sorted(HAND))
def test_traced_mobilenets_equal_the_hand_written_wiring(key):
    name, size = key.rsplit("_", 1)
    spec = models.get(name, 0.25 if name == "mobilenet" else 0.35)
    shapes = spec.param_shapes(int(size))
    params = {k: {v: np.zeros(s, np.float32) for v, s in d.items()} for k, d in shapes.items()}
    graph = G.trace(models.make_apply(spec), params, (1, int(size), int(size), 3))
    _assert_matches_hand(graph, params, HAND[key])


def test_traced_digits_cnn_equals_the_hand_written_wiring():
    params = digits.load_or_train()
    graph = G.trace(digits.apply, params, (1, 8, 8, 1))
    _assert_matches_hand(graph, params, HAND_DIGITS)
    x = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 1))
    np.testing.assert_allclose(graph.apply(params, x), np.asarray(digits.apply(params, x)),
                               rtol=1e-4, atol=1e-5)


# (name, alpha, input size, facts: op counts and activation kinds of the traced graph)
PORTS = [
    ("vgg16", None, 32, {"conv": 13, "dense": 3, "maxpool": 5}, {"relu": 15}),
    ("resnet50", None, 32, {"conv": 53, "bn": 53, "add": 16, "maxpool": 1, "pad": 2},
     {"relu": 49}),
    ("xception", None, 71, {"separable": 34, "conv": 6, "bn": 40, "add": 12, "maxpool": 4},
     {"relu": 35}),
    ("inception_v3", None, 75, {"conv": 94, "bn": 94, "concat": 15, "sumpool": 9,
                                "maxpool": 4}, {"relu": 94, "affine": 9}),
    ("mobilenet_v2", 0.35, 32, {"conv": 35, "depthwise": 17, "bn": 52, "add": 10, "pad": 4},
     {"relu6": 35}),
    ("mobilenet", 0.25, 32, {"conv": 15, "depthwise": 13, "bn": 27, "pad": 4},
     {"relu6": 27}),
]


@pytest.mark.parametrize("name,alpha,size,ops,acts", PORTS, ids=[p[0] for p in PORTS])
def test_every_keras_port_is_wired(name, alpha, size, ops, acts):
    """Random weights at a small input: the graph has every kernel, the expected joins, and
    running it (in NumPy, one image) gives the model's logits."""
    spec = models.get(name, alpha)
    params = spec.init(jax.random.key(0), input_size=size)
    graph = G.trace(models.make_apply(spec), params, (1, size, size, 3))
    kernels = {p for p in graph.paths if p.rsplit("/", 1)[1].endswith("kernel")}
    assert sorted(graph.kernel_paths()) == sorted(kernels)
    counts = {op: sum(n.op == op for n in graph.nodes) for op in ops}
    assert counts == ops
    kinds = {k: sum(n.act == k for n in graph.nodes) for k in acts}
    assert kinds == acts
    for row in G.layer_table(graph):  # every convolution of these ports has a batch norm or
        assert row["bn"] is not None or row["bias"] is not None  # a bias after it
    x = np.random.default_rng(1).standard_normal((1, size, size, 3))
    y = models.apply(spec, params, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(graph.apply(params, x), np.asarray(y), rtol=1e-4,
                               atol=1e-4 * float(np.abs(y).max()))


def test_jitted_graph_matches_numpy_graph():
    spec = models.get("mobilenet_v2", 0.35)
    params = spec.init(jax.random.key(0), input_size=32)
    graph = G.trace(models.make_apply(spec), params, (1, 32, 32, 3))
    x = np.random.default_rng(2).standard_normal((2, 32, 32, 3))
    y_jax = jax.jit(graph.apply)(params, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(y_jax), graph.apply(params, x), rtol=1e-4, atol=1e-5)


def test_activation_classes():
    assert G.classify_scalar(lambda t: np.maximum(t, 0)) == "relu"
    assert G.classify_scalar(lambda t: np.clip(t, 0, 6)) == "relu6"
    assert G.classify_scalar(lambda t: t * np.clip(t + 3, 0, 6) / 6) == "hard_swish"
    assert G.classify_scalar(lambda t: 1 / (1 + np.exp(-t))) == "sigmoid"
    assert G.classify_scalar(lambda t: 2 * t - 1) == "affine"
    assert G.classify_scalar(lambda t: np.abs(t)) == "elementwise"


def test_functional_activations_are_classified():
    """jax.nn activations inside a traced model become act nodes of the right kind."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jax.nn.hard_swish(nn.Conv(4, (3, 3), name="c1")(x))
            x = jax.nn.sigmoid(nn.Conv(4, (1, 1), name="c2")(x)) * x
            return nn.Dense(3, name="d")(jnp.mean(jax.nn.relu6(x), axis=(1, 2)))

    params = Net().init(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))["params"]
    graph = G.trace(lambda p, x: Net().apply({"params": p}, x), params, (1, 6, 6, 2))
    acts = [n.act for n in graph.nodes if n.op == "act"]
    assert "hard_swish" in acts and "sigmoid" in acts and "relu6" in acts
    assert [n.op for n in graph.nodes].count("mul") == 1  # x * sigmoid(...): a join
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 2))
    np.testing.assert_allclose(graph.apply(params, x),
                               np.asarray(Net().apply({"params": params}, jnp.asarray(x))),
                               rtol=1e-4, atol=1e-5)


def test_unsupported_operation_raises():
    params = {"d": {"kernel": np.ones((9, 2), np.float32)}}

    def gram(p, x):  # a product of two activations: no rule for its moments
        return (x @ jnp.swapaxes(x, -1, -2)).reshape(1, -1) @ p["d"]["kernel"]

    with pytest.raises(ValueError, match="unsupported operation 'dot_general'"):
        G.trace(gram, params, (1, 3, 3))


def _tiny_onnx():
    """A small ONNX classifier exercising the ShuffleNet-style operators."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("wd", 4, 1, 3, 3), init("bd", 4),
             init("w2", 4, 4, 1, 1), init("b2", 4), init("fc", 10, 8), init("fcb", 10),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "g"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "be"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "mu"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "va"),
             numpy_helper.from_array(np.array([-1, 2, 4, 4, 4], np.int64), "s1"),
             numpy_helper.from_array(np.array([-1, 8, 4, 4], np.int64), "s2"),
             numpy_helper.from_array(np.array([0.0], np.float32), "lo"),
             numpy_helper.from_array(np.array([6.0], np.float32), "hi")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "va"], ["bn"],
                         epsilon=1e-5),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Split", ["p1"], ["a", "b"], axis=1),
        helper.make_node("Conv", ["b", "w2", "b2"], ["d1"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["d1"], ["d2"]),
        helper.make_node("Conv", ["d2", "wd", "bd"], ["d3"], group=4, pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Concat", ["a", "d3"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "s1"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "s2"], ["sh"]),
        helper.make_node("AveragePool", ["sh"], ["ap"], kernel_shape=[2, 2], strides=[1, 1],
                         pads=[0, 0, 1, 1]),
        helper.make_node("GlobalAveragePool", ["ap"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"]),
        helper.make_node("Gemm", ["fl", "fc", "fcb"], ["y"], transB=1),
    ]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 16, 16])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_onnx_graph_from_the_node_list():
    from paper_repro.feedforward import onnx_model

    m = onnx_model.load_onnx(_tiny_onnx())
    graph = G.from_onnx(m)
    ops = [n.op for n in graph.nodes]
    assert ops.count("conv") == 2 and ops.count("depthwise") == 1 and ops.count("dense") == 1
    assert {"bn", "maxpool", "slice", "concat", "transpose", "sumpool", "sum"} <= set(ops)
    assert [n.act for n in graph.nodes if n.op == "act"][:2] == ["relu6", "relu"]
    rows = {r["name"]: r for r in G.layer_table(graph)}
    conv1 = next(r for r in rows.values() if r["prev"] == ())
    assert conv1["bn"] is not None and conv1["act"] == "relu6"
    assert conv1["strides"] == (2, 2) and conv1["padding"] == ((1, 1), (1, 1))
    assert sorted(graph.kernel_paths()) == sorted(
        f"{n}/kernel" for n, d in m.params.items() if "kernel" in d)
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16))
    y = np.asarray(m.apply(m.params, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(graph.apply(m.params, x), y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(graph.apply)(m.params, jnp.asarray(
        x, jnp.float32))), y, rtol=1e-4, atol=1e-5)


def test_shufflenet_onnx_graph(shared_data):
    from paper_repro.feedforward import onnx_model

    m = onnx_model.load_onnx(shared_data / "onnx" / "shufflenet_v2_x0_5_fp16.onnx")
    graph = G.from_onnx(m)
    ops = [n.op for n in graph.nodes]
    assert ops.count("conv") + ops.count("depthwise") == 56 and ops.count("dense") == 1
    assert ops.count("transpose") == 16 and ops.count("concat") == 16  # channel shuffles
    assert "bn" not in ops  # batch norm folded into the convolutions
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224))
    y = np.asarray(m.apply(m.params, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(graph.apply(m.params, x), y, rtol=1e-4,
                               atol=1e-4 * float(np.abs(y).max()))
