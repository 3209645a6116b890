"""A fake of the `inplace_abn` package's InPlaceABN (which needs CUDA to build), with its interface and its
eval-mode arithmetic: BatchNorm with weight |w| + eps, then the named activation. Used only to test that
our conversion recognises and converts the module."""

import torch
import torch.nn.functional as F
from torch import nn


class InPlaceABN(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, activation="leaky_relu",
                 activation_param=0.01):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.activation = activation
        self.activation_param = activation_param
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight.abs() + self.eps, self.bias,
                         False, 0.0, self.eps)
        if self.activation == "leaky_relu":
            return F.leaky_relu(x, self.activation_param)
        if self.activation == "elu":
            return F.elu(x, self.activation_param)
        return x
