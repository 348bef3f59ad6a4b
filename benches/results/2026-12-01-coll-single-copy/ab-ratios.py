import json,glob,sys,statistics as st,collections
root=sys.argv[1]
rows=collections.defaultdict(lambda: collections.defaultdict(list))
for v in ['classic','single']:
    for d in glob.glob(f'{root}/{v}-*'):
        for f in glob.glob(d+'/coll-*.json'):
            w=json.load(open(f)); m={c['contender']:c['median_ops_per_s'] for c in w['contenders']}
            nb=m['MPI non-blocking + test loop']; bl=m['MPI blocking call']; a=m['mfio adaptive over UCX']
            k=w['workload'].split('(')[0].replace('coll ','').strip()
            rows[k][v+'_nb'].append(nb/a); rows[k][v+'_bl'].append(bl/a)
def key(k):
    op,rest=k.split(' ',1); sz,rk=rest.split(', ')
    n,u=sz.split(' '); mult={'B':1,'KiB':1024,'MiB':1<<20}[u]
    return (op,int(rk.split()[0]),int(n)*mult)
print('| collective | size | ranks | ÷ MPI_I* two copies (UCX_TLS=^cma) | one copy | ÷ MPI blocking two copies | one copy |')
print('|---|---:|---:|---:|---:|---:|---:|')
for k in sorted(rows,key=key):
    r=rows[k]; op,rest=k.split(' ',1); sz,rk=rest.split(', ')
    print(f"| {op} | {sz} | {rk.split()[0]} | {st.median(r['classic_nb']):.2f}× | {st.median(r['single_nb']):.2f}× | {st.median(r['classic_bl']):.2f}× | {st.median(r['single_bl']):.2f}× |")
