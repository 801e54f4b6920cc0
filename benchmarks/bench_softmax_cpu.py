"""The issue-2 CPU benchmark: focal_loss vs F.cross_entropy and the seed-style module.

Shapes (8, 19, 256, 256) with 5% of pixels at ignore_index=255, (64, 1000) and
(2, 5, 64, 64, 64); index targets, label smoothing 0.1 and probability targets; eager and
torch.compile(fullgraph=True). Forward+backward and forward alone, median of interleaved
rounds after warm-up, torch.set_num_threads(2), and peak memory above the inputs. Same as
``focalloss bench``; pass ``--json PATH`` to keep the raw numbers.
"""

import sys

from focalloss.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
