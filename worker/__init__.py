"""The worker: Celery tasks over plain functions, one module per workflow.

Importing it builds nothing; `celery -A worker worker|beat` finds the app in `worker/celery.py`.
"""
