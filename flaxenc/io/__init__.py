"""Reading and writing sentence-transformers folders and PyTorch weights."""

from flaxenc.io.st_folder import STFolder, load_st_folder, resolve_folder, save_st_folder

__all__ = ["STFolder", "load_st_folder", "resolve_folder", "save_st_folder"]
