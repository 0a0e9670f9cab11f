import os
HERE = os.path.dirname(os.path.abspath(__file__))
import zlib, time, zopfli.zlib as zz, zopfli, deflate
exec(open(os.path.join(HERE, 'deflate_sizes.py')).read().split('fr=[')[0])
fr=[frame(s) for s in range(1000,1100)]
avg=lambda xs: sum(xs)/len(xs)
F=avg([len(f) for f in fr])
def rawlen_zlib(b): return len(b)-2-4   # zlib wrapper: 2-byte header, 4-byte adler
z9=[len(piece(f,9)) for f in fr]
print("frame", F, "zlib-9 sync piece", avg(z9), F/avg(z9))
# zlib -9 with Z_FINISH (final block, no sync marker): the data+header cost
fin=[len(zlib.compress(f,9))-6 for f in fr]
print("zlib-9 finish (no sync marker)", avg(fin), F/avg(fin))
t=time.time()
lz=[len(deflate.deflate_compress(f,12)) for f in fr]
print("libdeflate-12 (final block)", avg(lz), F/avg(lz), "%.0f us"%((time.time()-t)/len(fr)*1e6))

import zopfli.zlib as zzl
for it in (15,):
    t=time.time()
    zo=[len(zzl.compress(f, numiterations=it))-6 for f in fr]
    dt=(time.time()-t)/len(fr)
    print("zopfli %d it (final block)"%it, avg(zo), F/avg(zo), "%.0f us"%(dt*1e6))
