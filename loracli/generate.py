"""Image generation shared by ``loracli sample``, ``loracli fid`` and training snapshots. CONTRACT STUB.

Contract:

def sample(net, seeds, class_labels=None, steps=None, sampler=None, batch=64, device=None,
           precision=None, progress=False, **sampler_options) -> torch.Tensor
    # uint8 images [N, C, H, W] on the CPU, image k generated from seeds[k] alone (independent of batch
    # size), as NVlabs/edm's generate.py does for the edm family. class_labels: None (random per seed for
    # a conditional model, drawn from that seed's generator), an int, a list of ints, or soft vectors.
"""
