"""Evidence for assessors: one signed package of everything enclave leaves behind, a report to
look at, the POA&M, and manual attestations (docs/OPERATIONS.md, "Evidence for assessors";
docs/FORMAT.md, "Evidence package").

- `build.build(out, Sources(...), key, trust, now)`: `enclave evidence build`;
- `package.verify(path, root)`: `enclave evidence verify` (4: signature, 3: any file changed);
- `commands`: the `evidence build|verify` and `attest` commands.

Manual attestations (`enclave attest`) are enclave.trust.attest: `provision` merges them into
its checklists too, and this package sits above it. `verify` and `attest` need the core only;
`build` needs the `evidence` extra (openpyxl, for the POA&M workbook) and reads checklists with
the provisioning code's CKLB schema.
"""
