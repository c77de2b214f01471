"""How authors_notebook_continuations.json was made (run by hand, not by the tests).

Source: github ajyl/self_verification, commit 66676bae1134dc2243b176b7cba64d2be89c9751,
mech_interp.sync.ipynb (blob 0703aa8b). Its cells 23-26 print, for each of the 300
intervention contexts, the label the authors' `run()` gave ("-> Fail", "-> Success",
"-> Mix", "-> OOD (success|mix|unknown); offending token(s): [...]") and then the
continuation itself (`print(generation)`), then the three rates. This script keeps the
printed label and the continuation text, nothing else (data, not their code).

    git -C <mirror> show HEAD:mech_interp.sync.ipynb > nb.ipynb
    python extract_authors_notebook.py nb.ipynb authors_notebook_continuations.json
"""
import json
import re
import sys

CELLS = {"glu_valid": 23, "glu_valid_invalid": 24, "prev_token_heads": 25, "top3_heads": 26}
LABEL = re.compile(r"^-> (Fail|Success|Mix|OOD \((success|mix|unknown)\); offending token\(s\): .*)$")
SUMMARY = re.compile(r"\n(MLP 1|MLP both|Attn verif) success: ([0-9.]+)\n\1 mix: ([0-9.]+)\n\1 fail: ([0-9.]+)")


def records(text):
    out, cur = [], None
    for line in text.split("\n"):
        m = LABEL.match(line)
        if m:
            if cur is not None:
                out.append(cur)
            cur = [m.group(2) or m.group(1).lower(), []]
        elif cur is not None:
            cur[1].append(line)
    out.append(cur)
    # print(generation) ends each text with the newline before the next label line
    return [(label, "\n".join(lines)) for label, lines in out]


def main(nb_path, out_path):
    nb = json.load(open(nb_path))
    data = {}
    for name, cell in CELLS.items():
        text = "".join("".join(o.get("text", "")) for o in nb["cells"][cell]["outputs"] if o.get("name") == "stdout")
        m = SUMMARY.search(text)
        recs = records(text[: m.start() + 1])
        last_label, last_text = recs[-1]
        recs[-1] = (last_label, last_text[:-1])  # the newline before the summary lines
        data[name] = {"printed_rates": [float(m.group(i)) for i in (2, 3, 4)],
                      "continuations": [{"printed": lab, "text": t} for lab, t in recs]}
        assert len(recs) == 300, (name, len(recs))
    json.dump({"source": "github.com/ajyl/self_verification@66676bae1134dc2243b176b7cba64d2be89c9751 "
                         "mech_interp.sync.ipynb, cells 23-26 (stdout)", "conditions": data},
              open(out_path, "w"), indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
