#!/usr/bin/env bash
# Measures POST /v1/infer latency against a running gantry-infer:
#   inference/bench.sh http://127.0.0.1:PORT [REQUESTS] [ROWS]
# Sequential requests with a fresh connection each (one curl per request),
# then the same count over one kept-alive connection (one curl, many URLs).
# Prints min / median / p90 / max of curl's time_total in milliseconds.
set -euo pipefail

url="${1:?usage: bench.sh URL [REQUESTS] [ROWS]}"
requests="${2:-200}"
rows="${3:-1}"

row="[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8,0.9,-1.0,1.1,-1.2,1.3,-1.4,1.5,-1.6]"
body='{"inputs":['"$row"
for ((i = 1; i < rows; i++)); do body+=",$row"; done
body+=']}'

summary() { # $1: label; stdin: one time_total (seconds) per line
    sort -n | awk -v label="$1" '
        { t[NR] = $1 * 1000 }
        END {
            if (NR == 0) { print label ": no samples"; exit 1 }
            mid = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
            p90 = t[int(NR * 0.9 + 0.999999)]
            printf "%s: n=%d min=%.3f ms median=%.3f ms p90=%.3f ms max=%.3f ms\n",
                label, NR, t[1], mid, p90, t[NR]
        }'
}

post() { curl -sS --fail -o /dev/null -H 'Content-Type: application/json' --data-binary "$body" "$@"; }

for ((i = 0; i < requests; i++)); do
    post -w '%{time_total}\n' "$url/v1/infer"
done | summary "new connection per request ($rows row(s))"

urls=() # curl needs one -o per URL, or later bodies go to stdout
for ((i = 0; i < requests; i++)); do urls+=(-o /dev/null "$url/v1/infer"); done
post -w '%{time_total}\n' "${urls[@]}" | summary "one kept-alive connection ($rows row(s))"
