"""Image search: a faiss index over a gallery of image embeddings, exact or IVF, saved to and loaded from disk."""
from vlp.search.index import IMAGE_EXTENSIONS, ImageIndex, build_index, find_images, is_index_dir, open_gallery

__all__ = ["IMAGE_EXTENSIONS", "ImageIndex", "build_index", "find_images", "is_index_dir", "open_gallery"]
