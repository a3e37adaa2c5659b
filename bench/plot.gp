# gnuplot script of bench/run.sh: requests/s per workload per contender.
# gnuplot -e "datafile='...'; outfile='...'; ncols=N; conc='64'" plot.gp
# datafile: a header line "workload contender...", then one line per
# workload with the req/s of each contender.

set terminal pngcairo size 1100,620 font ",11" noenhanced
set output outfile

set title sprintf("requests/s at c=%s (median; log scale)", conc)
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set yrange [*:*]
set grid ytics
set ylabel "requests/s"
set key outside right top vertical autotitle columnheader
set xtics nomirror
set datafile missing "NaN"

plot for [i=2:ncols] datafile using i:xtic(1)
