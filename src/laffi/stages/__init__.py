"""The pipeline's stages, one module and one plain function each, each usable alone:
prepare -> generate -> annotate -> build -> train -> evaluate (`laffi STAGE RUN_DIR`)."""
