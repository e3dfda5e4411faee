"""loracli-diffusers: Hugging Face diffusers networks as loracli base models (a second plugin example).

``diffusers-unet`` (entry point ``loracli.models``) wraps diffusers' ``UNet2DModel`` so loracli's LoRA
conditioning adapts its attention projections; ``loracli_diffusers.convert`` (entry point
``loracli.converters``) reads diffusers model and pipeline folders, ``loracli_diffusers.export`` writes them.
"""
