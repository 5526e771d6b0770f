from events_service.server import serve

serve()
