# usage: python3 cmp.py PREFIX A B   (dirs PREFIX-A-i, PREFIX-B-i): ours and MPI blocking us per call
import json,glob,os,sys
pre,names=sys.argv[1],sys.argv[2:]
rows={}
for n in names:
    for d in sorted(glob.glob('%s-%s-*'%(pre,n))):
        for f in glob.glob(d+'/coll-*.json'):
            j=json.load(open(f)); name=os.path.basename(f)[5:].replace('-open-mpi-multiple.json','')
            c={x['contender']:1e6/x['median_ops_per_s'] for x in j['contenders']}
            rows.setdefault(name,{}).setdefault(n,[]).append((c['mfio adaptive over UCX'],c.get('MPI blocking call',0),c.get('MPI non-blocking + test loop',0)))
for name in sorted(rows):
    v=rows[name]
    print(name)
    for n in names:
        print('   %-6s ours %s   | ours/MPI_blocking %s  ours/MPI_I %s'%(n,' '.join('%.3f'%x[0] for x in v.get(n,[])),' '.join('%.2f'%(x[0]/x[1]) for x in v.get(n,[])),' '.join('%.2f'%(x[0]/x[2]) for x in v.get(n,[]))))
