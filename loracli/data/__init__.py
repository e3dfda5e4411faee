"""Training data. CONTRACT STUB -- being implemented.

Contract:

def open_dataset(path: str | None, resolution: int | None = None) -> ImageDataset
    # path None: the built-in synthetic data set (no download); otherwise an EDM dataset zip, an image
    # folder (class = sub-folder) or a cifar-10-batches-py folder. Raises UserError for a missing or
    # malformed path.

class ImageDataset(torch.utils.data.Dataset):
    name: str; resolution: int; channels: int; label_dim: int (0 when unlabelled)
    def __len__(self) -> int
    def __getitem__(self, i) -> tuple[np.ndarray uint8 [C, H, W], int label]
"""
