"""Test-only reference: the Conv2Former classifier as in the authors' released code.

An independent plain-PyTorch re-implementation written from the paper and the authors' checkpoint layout (not from mmc2f),
with the authors' parameter names, so that tests can check that mmc2f's model computes the same
function and that checkpoints in the authors' layout convert correctly. It deliberately uses the
authors' own channels-first LayerNorm formula (explicit mean / variance) rather than
``F.layer_norm``; results therefore agree with mmc2f to float tolerance, not bit for bit.

``legacy_names=True`` builds the earlier public naming (``attn.a.*`` instead of ``attn.att.*``).
Only the forward in eval mode matters here: there is no stochastic depth.
"""
import torch
import torch.nn as nn

ARCHS = {
    'nano': ([64, 128, 256, 512], [2, 2, 8, 2], 7),
    'tiny': ([72, 144, 288, 576], [3, 3, 12, 3], 11),
    'small': ([72, 144, 288, 576], [4, 4, 32, 4], 11),
    'base': ([96, 192, 384, 768], [4, 4, 34, 4], 11),
    'large': ([128, 256, 512, 1024], [4, 4, 48, 4], 11),
}


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 of (B, C, H, W), written out as the authors' ``channels_first`` case."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvMod(nn.Module):

    def __init__(self, dim, kernel_size, legacy_names=False):
        super().__init__()
        self.legacy_names = legacy_names
        self.norm = ChannelsFirstLayerNorm(dim)
        branch = nn.Sequential(
            nn.Conv2d(dim, dim, 1), nn.GELU(),
            nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim))
        if legacy_names:
            self.a = branch
        else:
            self.att = branch
        self.v = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        x = self.norm(x)
        a = (self.a if self.legacy_names else self.att)(x)
        return self.proj(a * self.v(x))


class MLP(nn.Module):

    def __init__(self, dim, mlp_ratio=4):
        super().__init__()
        self.norm = ChannelsFirstLayerNorm(dim)
        self.fc1 = nn.Conv2d(dim, dim * mlp_ratio, 1)
        self.pos = nn.Conv2d(dim * mlp_ratio, dim * mlp_ratio, 3, padding=1, groups=dim * mlp_ratio)
        self.fc2 = nn.Conv2d(dim * mlp_ratio, dim, 1)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.fc1(self.norm(x)))
        x = x + self.act(self.pos(x))
        return self.fc2(x)


class Block(nn.Module):

    def __init__(self, dim, kernel_size, legacy_names=False, layer_scale_init_value=1e-6):
        super().__init__()
        self.attn = ConvMod(dim, kernel_size, legacy_names)
        self.mlp = MLP(dim)
        self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x):
        x = x + self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * self.attn(x)
        x = x + self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * self.mlp(x)
        return x


class AuthorsConv2Former(nn.Module):
    """The classifier: stem, 4 stages, ``head`` (1x1 -> 1280, GELU, LN), mean pool, ``pred``."""

    def __init__(self, dims, depths, kernel_size=11, num_classes=1000, in_chans=3,
                 head_dim=1280, legacy_names=False):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, 2, 1, bias=False), nn.GELU(),
            nn.BatchNorm2d(dims[0] // 2),
            nn.Conv2d(dims[0] // 2, dims[0] // 2, 3, 1, 1, bias=False), nn.GELU(),
            nn.BatchNorm2d(dims[0] // 2),
            nn.Conv2d(dims[0] // 2, dims[0], 2, 2, bias=False)))
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        self.stages = nn.ModuleList([
            nn.Sequential(*[Block(dims[i], kernel_size, legacy_names) for _ in range(depths[i])])
            for i in range(4)
        ])
        self.head = nn.Sequential(
            nn.Conv2d(dims[-1], head_dim, 1), nn.GELU(), ChannelsFirstLayerNorm(head_dim))
        self.pred = nn.Linear(head_dim, num_classes)

    def forward_features(self, x):
        """The four stage outputs (what mmc2f's backbone returns with out_indices=(0, 1, 2, 3))."""
        outs = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            outs.append(x)
        return outs

    def forward(self, x):
        x = self.head(self.forward_features(x)[-1])
        return self.pred(x.mean([-2, -1]))


def build_reference(arch, **kwargs):
    """``arch``: a name in :data:`ARCHS` or ``(dims, depths, kernel_size)``."""
    dims, depths, kernel_size = ARCHS[arch] if isinstance(arch, str) else arch
    return AuthorsConv2Former(dims, depths, kernel_size, **kwargs)


@torch.no_grad()
def randomize_(model, seed=0):
    """Fill every parameter and BN buffer with random values of a sensible scale, so that every
    branch (including the layer scales, 1e-6 at init) visibly affects the output."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(('layer_scale_1', 'layer_scale_2')):
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.25)
        elif p.dim() == 1 and name.endswith('weight'):  # LayerNorm / BatchNorm scales
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.75)
        elif p.dim() == 1:  # biases
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        else:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 0.5 + 0.75)
            m.num_batches_tracked.fill_(7)
    return model
