"""loracli-diffusers: Hugging Face diffusers networks as loracli base models (a second plugin example).

``diffusers-unet`` and ``diffusers-dit`` (entry points ``loracli.models``) wrap diffusers' ``UNet2DModel`` and
``DiTTransformer2DModel`` so loracli's LoRA conditioning adapts their attention projections; ``loracli_diffusers.convert`` (entry point
``loracli.converters``) reads diffusers model and pipeline folders, ``loracli_diffusers.export`` writes them.
"""
