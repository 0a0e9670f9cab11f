import os
HERE = os.path.dirname(os.path.abspath(__file__))
import zlib, sys
exec(open(os.path.join(HERE, 'deflate_sizes.py')).read().split('fr=[')[0])
class Bits:
    def __init__(s,b): s.b=b; s.p=0
    def get(s,n):
        v=0
        for i in range(n):
            v|=((s.b[s.p>>3]>>(s.p&7))&1)<<i; s.p+=1
        return v
def build(lengths):
    # canonical decode table: dict (len,code)->sym
    mx=max(lengths); bl=[0]*(mx+1)
    for l in lengths:
        if l: bl[l]+=1
    code=0; nxt=[0]*(mx+2)
    for b in range(1,mx+1):
        code=(code+bl[b-1])<<1; nxt[b]=code
    t={}
    for s,l in enumerate(lengths):
        if l: t[(l,nxt[l])]=s; nxt[l]+=1
    return t
def dec(bits,t):
    c=0;l=0
    while True:
        c=(c<<1)|bits.get(1); l+=1
        if (l,c) in t: return t[(l,c)]
def header_bits(p):
    b=Bits(p); bfinal=b.get(1); bt=b.get(2)
    if bt!=2: return None
    hlit=b.get(5)+257; hdist=b.get(5)+1; hclen=b.get(4)+4
    order=[16,17,18,0,8,7,9,6,10,5,11,4,12,3,13,2,14,1,15]
    cl=[0]*19
    for i in range(hclen): cl[order[i]]=b.get(3)
    t=build(cl); n=0; lens=[]
    while n<hlit+hdist:
        s=dec(b,t)
        if s<16: lens.append(s); n+=1
        elif s==16: r=3+b.get(2); lens+= [lens[-1]]*r; n+=r
        elif s==17: r=3+b.get(3); lens+=[0]*r; n+=r
        else: r=11+b.get(7); lens+=[0]*r; n+=r
    return b.p, hlit, hdist
fr=[frame(s) for s in range(1000,1100)]
for lvl in (6,9):
    hs=[]; 
    for f in fr:
        p=piece(f,lvl); hb,hl,hd=header_bits(p); hs.append(hb)
    print(lvl, "dyn header bytes avg", sum(hs)/len(hs)/8)
# dictionary effect: previous frame as dict
tot=0
for i in range(1,len(fr)):
    c=zlib.compressobj(6,zlib.DEFLATED,-15,8,zlib.Z_DEFAULT_STRATEGY,zdict=fr[i-1])
    tot+=len(c.compress(fr[i])+c.flush(zlib.Z_SYNC_FLUSH))
print("with previous frame as dictionary", tot/(len(fr)-1))
