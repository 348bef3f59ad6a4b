# usage: python3 show.py busy|idle  (from this directory)
import json,glob,os,sys
pre=sys.argv[1]
DIR=os.path.dirname(os.path.abspath(__file__))+'/'
rows={}
for d in sorted(glob.glob(DIR+'%s-*'%pre)):
    if not os.path.isdir(d): continue
    b,r=os.path.basename(d).split('-')[1:3]
    for f in glob.glob(d+'/coll-*.json'):
        j=json.load(open(f)); name=os.path.basename(f)[5:].replace('-open-mpi-multiple.json','')
        c={x['contender']:1e6/x['median_ops_per_s'] for x in j['contenders']}
        rows.setdefault(name,{}).setdefault(b,[]).append((c['mfio adaptive over UCX'],c['MPI non-blocking + test loop']))
print('%-26s %-34s %-34s'%('row (us per call, adaptive over UCX; jobs)','old (no yield)','new (yield after 20 us)'))
for name in sorted(rows):
    v=rows[name]
    f=lambda b:' '.join('%.1f'%x[0] for x in v[b])
    print('%-26s %-34s %-34s'%(name,f('old'),f('new')))
