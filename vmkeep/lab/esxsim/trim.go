package main

// Guest trim through the admin API: POST /vmkeep-lab/write?…&trim=1 discards areas instead of
// writing them (Disk.trim in deltafmt.go): exactly offset=&length= when given, else random
// 4 KiB-aligned extents covering about percent= % of the disk (seeded by seed=). Answers the
// extents like a write.

import (
	"math/rand"
	"net/http"
	"strconv"
)

func (lab *Lab) adminTrim(w http.ResponseWriter, d *Disk, q map[string][]string, rng *rand.Rand) {
	var out [][2]int64
	if at := first(q["offset"]); at != "" {
		off, _ := strconv.ParseInt(at, 10, 64)
		n, _ := strconv.ParseInt(first(q["length"]), 10, 64)
		if off < 0 || n <= 0 || off+n > d.Capacity {
			jsonErr(w, 400, "offset/length outside the disk")
			return
		}
		out = append(out, [2]int64{off, n})
	} else {
		pct, _ := strconv.ParseFloat(first(q["percent"]), 64)
		total := int64(float64(d.Capacity) * pct / 100)
		const align = 4096
		for done := int64(0); done < total; {
			n := (1 + rng.Int63n(64)) * align * 4 // 16 KiB .. 1 MiB
			if n > total-done {
				n = (total - done + align - 1) / align * align
			}
			if n > d.Capacity {
				n = d.Capacity / align * align
			}
			off := rng.Int63n((d.Capacity-n)/align+1) * align
			out = append(out, [2]int64{off, n})
			done += n
		}
	}
	var total int64
	for _, e := range out {
		if err := d.trim(e[0], e[1], true); err != nil {
			jsonErr(w, 500, err.Error())
			return
		}
		total += e[1]
	}
	writeJSON(w, 200, map[string]interface{}{"extents": out, "bytes": total, "trimmed": true})
}
