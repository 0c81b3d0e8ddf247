"""The mesh: every daemon serves (`probe.serve`) and probes every peer with reflect; each
keeps its own row of pair figures (`stats`), probed on a cadence (`node`) towards peers
found by name or list (`peers`), and any node draws the whole matrix from every row
(`page`)."""
