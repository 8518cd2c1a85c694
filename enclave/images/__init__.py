"""enclave.images: container images in bundles, and the reference images built offline.

- `layout`: how an image sits in a bundle component (OCI layout + `docker load` manifest), pure;
- `export`: engine -> blob store -> component files, for `bundle build` (kind `image`);
- `collect`: `bundle build` with image components: export them, then write the bundle;
- `load`: verified bundle -> engine, with the loaded ID checked (`enclave images load`);
- `engine`: which engine (`unix://`, `ssh://` through paramiko; never plain TCP);
- `rootfs`: debootstrap + `docker import` (shared with the testbed's host image);
- `base`, `wheels`, `reference`: `enclave images base` and `enclave images build`.

FORMAT.md section 10 ("Images") is the contract.
"""
