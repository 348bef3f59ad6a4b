import json,glob,sys,statistics,re
d=sys.argv[1]
res={}
for f in glob.glob(d+'/*-*/coll-*.json'):
    v=f.split('/')[-2].split('-')[0]
    w=json.load(open(f)); m={c['contender']:c['median_ops_per_s'] for c in w['contenders']}
    a=m.get('mfio adaptive over UCX'); nb=m['MPI non-blocking + test loop']; bl=m['MPI blocking call']
    if not a: continue
    k=re.sub(r' \(Open MPI.*\)','',w['workload'][5:])
    res.setdefault(k,{}).setdefault(v,[]).append((nb/a, bl/a))
def key(k):
    op,sz,un,rk=re.match(r'(\w+) (\d+) (\w+), (\d)',k).groups()
    return (op,int(rk),int(sz)*{'B':1,'KiB':1024,'MiB':1<<20}[un])
print('| collective | size | ranks | ÷ MPI_I* before | after | ÷ MPI blocking before | after |')
print('|---|---:|---:|---:|---:|---:|---:|')
for k in sorted(res,key=key):
    op,rk,sz=key(k)
    r=res[k]
    med=lambda v,i: statistics.median(x[i] for x in r.get(v,[(float('nan'),)*2]))
    print('| %s | %s | %d | %.2f× | **%.2f×** | %.2f× | **%.2f×** |'%(op,k.split(',')[0].split(' ',1)[1],rk,med('old',0),med('new',0),med('old',1),med('new',1)))
