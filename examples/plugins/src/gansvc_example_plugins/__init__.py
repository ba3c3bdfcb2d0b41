"""gansvc's worked plugin package: one model, two data sets (held in memory and streamed), one extractor."""
