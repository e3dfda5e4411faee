"""IDDPM's Gaussian diffusion over integer timesteps (ddpm family). CONTRACT STUB -- being implemented.

Contract (the train loop and the sampler code against it):

class GaussianDiffusion:
    num_timesteps: int                 # after respacing
    timestep_map: torch.Tensor          # spaced index -> original timestep (what the network receives)

    @classmethod
    def from_model_config(cls, model_config, steps=None) -> GaussianDiffusion
        # reads diffusion_steps, noise_schedule, learn_sigma from a ddpm-family model config;
        # steps: None (all T), an int or a respacing string like "250" or "ddim50".

    def training_losses(self, model, x0, t, class_labels=None, noise=None) -> dict[str, Tensor]
        # per-sample losses: "loss" (hybrid L_simple + L_vlb/1000-equivalent when learn_sigma, else L_simple),
        # "mse", and "vb" when learned; model is called as model(x_t, t, class_labels).

    def sample(self, model, noise, class_labels=None, *, sampler="ancestral", eta=0.0,
               randn_like=torch.randn_like, progress=None) -> Tensor
        # runs the reverse process from noise (x_T); sampler "ancestral" or "ddim"; all fresh noise is
        # drawn through randn_like(x) so callers can make image k depend on seed k only; progress(i, n) is
        # called once per step; returns x_0 in [-1, 1].
"""
