"""Bar chart of the Fashion-MNIST distillation study: kNN (frozen) and fine-tuned top-1 per student.
python scripts/plot_distill_study.py docs/results/fmnist-distill.csv docs/results/fmnist-distill.png"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
SHORT = {
    "qk+vv, masked input (50%)": "qk+vv\nmasked 50%",
    "qk+vv, sequential small -> tiny -> pico": "qk+vv\nsequential",
    "MAE-pretrained pico (no teacher)": "MAE pico\n(no teacher)",
}
labels = [SHORT.get(r["student"], r["student"]) for r in rows]
knn = np.array([float(r["knn_top1"]) for r in rows])
ft = np.array([float(r["finetune_top1"]) for r in rows])
x = np.arange(len(rows))
fig, ax = plt.subplots(figsize=(11, 4), dpi=120)
ax.bar(x - 0.2, knn, 0.4, label="kNN top-1 (frozen class token)", color="tab:blue")
ax.bar(x + 0.2, ft, 0.4, label="fine-tuned top-1 (6,000 labels, 5 epochs)", color="tab:orange")
for i in range(len(rows)):
    ax.text(x[i] - 0.2, knn[i] + 0.4, f"{knn[i]:.1f}", ha="center", fontsize=7)
    ax.text(x[i] + 0.2, ft[i] + 0.4, f"{ft[i]:.1f}", ha="center", fontsize=7)
ax.set_xticks(x)
ax.set_xticklabels(labels, fontsize=8)
ax.set_ylim(40, 82)
ax.set_ylabel("Fashion-MNIST test top-1 (%)")
ax.set_title("mim_vit_pico students of a MAE mim_vit_small teacher (one seed)")
ax.grid(axis="y", alpha=0.3)
ax.legend(frameon=False, loc="upper center", ncol=2, fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2])
