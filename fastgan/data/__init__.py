"""Data for GAN training: image sets shipped in packages or fetched by torchvision, and 2D toys."""
from .images import (DATASETS, FASHION_MNIST_INSTALL,
                     DataFileError, FASHION_MNIST_ROOT, IMAGE_DATASETS, TOY_DATASETS,
                     DatasetUnavailableError, ImageTensorDataset, fit_images, load_dataset, read_idx,
                     sample_indices, to_unit_range)
from .toy import GaussianMixture2D, ToyDataset, grid25, ring8, toy_dataset, toy_mixture

__all__ = ["load_dataset", "DATASETS", "IMAGE_DATASETS", "TOY_DATASETS", "DatasetUnavailableError", "DataFileError",
           "ImageTensorDataset", "fit_images", "read_idx", "sample_indices", "to_unit_range", "FASHION_MNIST_ROOT",
           "FASHION_MNIST_INSTALL", "GaussianMixture2D", "ToyDataset", "ring8", "grid25", "toy_dataset",
           "toy_mixture"]
