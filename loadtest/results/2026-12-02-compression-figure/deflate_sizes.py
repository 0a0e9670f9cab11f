# Sizes of self-contained, sync-flushed deflate pieces (C zlib through Python) for the loadtest
# --realistic payload (a port of loadtest/src/payload.rs write_rows) as SSE frames.
import zlib, time
M=(1<<64)-1
SYM=["AAPL","MSFT","NVDA","AMZN","GOOGL","META","TSLA","BRK.B","AVGO","JPM","LLY","V","XOM","UNH","MA","COST"]
VEN=["XNAS","XNYS","ARCX","BATS"]
def rows(seq, ts, size):
    out='{"seq":%d,"ts":%d,"rows":['%(seq,ts)
    x=((seq*0x9E3779B97F4A7C15)&M)|1
    first=True
    while len(out)+100<size:
        x^=(x<<13)&M; x^=x>>7; x^=(x<<17)&M
        if not first: out+=','
        first=False
        bid=5000+(x>>8)%95000
        a=bid+1+(x>>40)%9
        out+='{"symbol":"%s","bid":%d.%02d,"ask":%d.%02d,"size":%d,"venue":"%s","time":%d}'%(SYM[x%16],bid//100,bid%100,a//100,a%100,100*(1+(x>>20)%50),VEN[(x>>30)%4],ts//1000-(x>>50)%500)
    return out+']}'
def frame(seq):
    ts=1764650000000000+seq*100000
    return ('id: 19ad3f2c1b0:%d\ndata: %s\n\n'%(seq+1,rows(seq,ts,1024))).encode()
def piece(data, level, wbits=-15, mem=8, strat=zlib.Z_DEFAULT_STRATEGY):
    c=zlib.compressobj(level, zlib.DEFLATED, wbits, mem, strat)
    return c.compress(data)+c.flush(zlib.Z_SYNC_FLUSH)
fr=[frame(s) for s in range(1000,1300)]
avg=lambda xs: sum(xs)/len(xs)
print("frame", avg([len(f) for f in fr]))
for lvl in (1,6,9):
    ps=[piece(f,lvl) for f in fr]
    print("zlib level",lvl, avg([len(p) for p in ps]), "ratio", avg([len(f) for f in fr])/avg([len(p) for p in ps]))
for strat,n in ((zlib.Z_FIXED,"fixed"),(zlib.Z_FILTERED,"filtered"),(zlib.Z_RLE,"rle")):
    print(n, avg([len(piece(f,9,strat=strat)) for f in fr]))
print(fr[0][:300])
